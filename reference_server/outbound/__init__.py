"""The outbound half of the reference server: routing, the relay client, retries and bounces."""
