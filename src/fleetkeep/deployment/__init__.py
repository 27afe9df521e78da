"""Mass deployment: tokens, activation (IMD v2/v4/v5, auth keys), devices, replacement, MDM."""
