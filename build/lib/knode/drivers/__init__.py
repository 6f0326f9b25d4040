# kerbside node firmware - sensor drivers: frame parsers with error counts.
