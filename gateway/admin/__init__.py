"""Identities and trust: key store, site PKI, provisioning, key rotation, broker config and ACLs, admin audit."""
