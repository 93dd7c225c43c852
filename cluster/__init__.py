"""Launching the cluster's hosts (locally as namespaces, or on AWS) and handing them to Salt."""
