"""The daemon core: containers, exec, logs, events, images, networks, volumes, system facts.

It owns the state under the data root and knows nothing about HTTP.
"""
