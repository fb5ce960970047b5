"""``mscc replay``: replaying trusts' message logs to the hub, the way integration engineers onboard a
trust.

    command     the command line: arguments, checks, exit status
    files       which files (folders walked, gzip by magic bytes) and the checks made before starting
    readers     files -> items, streamed: ER7 logs, MLLP captures, batches, FHIR NDJSON
    items       one unit to send and what it says about itself (MSH read, no parse)
    engine      a run: items dealt to lanes, answers counted, journaled, reported
    mllp_lane   one MLLP connection (pipelined, replies matched by MSA-2)
    http_lane   one HTTP request slot (POST /hl7v2, /fhir/{type}, /fhir)
    auth        OAuth 2.0 client credentials: the bearer token, renewed before it expires
    outcomes    an ACK or HTTP answer -> accepted, error, rejected, unanswered
    journal     what was acknowledged, for --resume
    summary     counts by message type and sender, the failures file
    progress    --rate's pacer and the progress line
    dry_run     what the mapping would produce, locally (intake's lean read, the mapper's dispatch)
"""
