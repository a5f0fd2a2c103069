"""needlework.study"""
