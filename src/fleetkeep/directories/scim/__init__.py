"""The SCIM 2.0 service provider at ``/scim/v2``: identity providers push users and groups."""
