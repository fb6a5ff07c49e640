"""Privacy-preserving analytics: engagement aggregates with k-suppression and differential
privacy (OpenDP) paid from a monthly budget, and attribution through monthly join tokens.

``rules`` holds the pure rules; ``noise`` wraps OpenDP; ``engagement``, ``attribution`` and
``budget`` are the storage shell; ``service`` puts them together for the API.
"""
