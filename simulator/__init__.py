"""kerbside simulator."""
