"""kerbside provisioning."""
