"""Decision: facts in, one immutable ``Decision`` out (the mode only changes the outcome), plus the answers
nsp-proxy gives for a denial and the guards that refuse malformed requests. No mitmproxy import here."""
