"""Assurance: levels of assurance and what upstream IdPs' statements are worth."""
