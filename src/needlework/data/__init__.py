"""needlework.data"""
