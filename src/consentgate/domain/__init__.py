"""Pure rules: identity normalisation, consent state, time. No I/O imports here."""
