"""needlework.interventions"""
