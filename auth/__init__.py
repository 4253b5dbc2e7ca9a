"""LDAP login for the hub and the directory client under it. Never imports `schedulers`."""
