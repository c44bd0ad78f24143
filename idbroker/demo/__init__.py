"""In-process demo pieces: an organisation IdP and a chain application (relying party)."""
