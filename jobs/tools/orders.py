"""Tool outputs for jobs/graded.yaml: each is called as fn(arguments, ctx) when the assistant calls
the function, and returns a string (sent as it is) or data (sent as JSON).

`arguments` are the call's arguments (a dict); `ctx` holds "tool", "conversation_id", "vars",
"turn" (its index) and "user" (the turn's user message). An exception ends that turn with an error
naming this function; it never stops the worker.
"""

PARCELS = {"P7": "at the depot", "P9": "out for delivery"}


def track(arguments, ctx):
    """Where a parcel is, by its id; unknown ids get an error the assistant can read."""
    parcel = arguments.get("parcel", "")
    if parcel not in PARCELS:
        return {"error": f"unknown parcel {parcel!r}"}
    return {"parcel": parcel, "where": PARCELS[parcel], "shop": ctx["vars"].get("shop", "main")}
