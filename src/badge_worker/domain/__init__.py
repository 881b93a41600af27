"""Pure domain core: models, rules, windows, expiry and error codes. No I/O, no client imports."""
