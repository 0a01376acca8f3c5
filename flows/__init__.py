"""party-rates: the dataflow and its parts."""
