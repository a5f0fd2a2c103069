"""needlework.report"""
