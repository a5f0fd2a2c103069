"""needlework.train"""
