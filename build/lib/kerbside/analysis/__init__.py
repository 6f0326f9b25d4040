"""kerbside analysis."""
