"""Docker Engine API server: HTTP transport, routers, version negotiation, errors → HTTP.

``ketch.api`` knows HTTP and the Engine API's shapes; behaviour lives in
``ketch.engine`` behind the narrow Protocols each router declares.
"""
