"""The wire shapes at the ground floor: OpenAI's error body and the route table.

Every other layer (governance, observability, engine, api) imports these and
nothing here imports any of them.
"""
