"""Python checks for jobs/graded.yaml: each is called as fn(reply, ctx).

`ctx` holds the turn ("turn", its "index"), the conversation so far ("conversation": the turn
records), "vars", "tool_calls" and the "conversation_id"; "scope" is "turn", or "conversation"
for a conversation's own `expect:` (then `reply` is every reply, joined by blank lines).
"""


def mentions_policy(reply, ctx):
    """Passes when the reply names the refund window; the reason shows in reports."""
    ok = "30 days" in reply
    return {"passed": ok, "reason": "names the 30-day window" if ok else "no refund window given"}


def on_topic_share(reply, ctx):
    """A score 0..1: the share of replies that mention the product, an order or a refund."""
    replies = [t["assistant"] or "" for t in ctx["conversation"]]
    words = ("refund", "order", ctx["vars"].get("product", "?"))
    hits = sum(any(w in r.lower() for w in words) for r in replies)
    return hits / len(replies) if replies else 0.0
