"""Test doubles that speak real protocols over real sockets (no mocks): see `resend_server`."""
