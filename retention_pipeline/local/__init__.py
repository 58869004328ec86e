"""The local harness: the embedded PostgreSQL and its launcher, demo data, the simulator, and stand-ins
for Stripe (localstripe) and Resend (`fake_resend`) that speak the real protocols over real sockets.

Only the `cli` package imports it; the code location (`retention_pipeline.definitions`) never does, so a
production install runs without the harness's packages.
"""
