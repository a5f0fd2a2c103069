"""needlework.models"""
