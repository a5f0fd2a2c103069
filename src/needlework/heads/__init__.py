"""needlework.heads"""
