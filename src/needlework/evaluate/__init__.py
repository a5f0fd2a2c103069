"""needlework.evaluate"""
