"""Plumbing shared by every invoicing service, written once."""
