"""Planted-shortcut detection benchmark: does the audit flag what was planted, and only that?"""
