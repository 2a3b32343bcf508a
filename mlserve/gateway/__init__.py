"""The inference gateway's domain: routing a call to a Triton that serves it, and counting."""
