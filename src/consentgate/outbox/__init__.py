"""The outbox: outward events written in the transaction of the change they report, and the
relay that delivers them to CRM/CMP endpoints as signed Standard Webhooks requests.

``events`` (the catalogue and payload shapes) and ``rules`` (signatures, retry schedule) are
pure; ``store`` writes events and fans them out to endpoints; ``endpoints`` and
``deliveries`` are what the API manages; ``relay`` and ``sender`` deliver.
"""
