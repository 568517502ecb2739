"""The service's routes, one APIRouter per concern, each built from the parts it uses:

predictions  /v1/classify, /v1/chat/completions, /v1/completions (streaming.py: their SSE), /v1/models
feedback     /v1/feedback
operations   /health, /metrics
dashboard    the page at / and its JSON under /api/
"""
