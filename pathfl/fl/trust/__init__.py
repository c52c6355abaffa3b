"""What the federation does to be trusted: audit logs, certificates and site keys, site
policies, update validation, client-side differential privacy, site compatibility checks,
the reply whitelist (records) and the pre-flight checks of ``pathfl fl simulate``."""
