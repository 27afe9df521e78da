"""Directory provisioning: sources (AD/LDAP, SCIM, Entra, Google, CSV) feeding one sync engine."""
