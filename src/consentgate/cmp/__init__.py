"""CMP integrations: signed webhooks, adapters from CMP formats to consent events."""
