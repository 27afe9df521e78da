"""The HTTP edge: app factory, auth and roles, problem+json errors, pagination."""
