"""Cryptographic building blocks. Modules here are the hazardous layer: use the SDK instead."""
