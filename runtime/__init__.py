"""oat_edge.runtime"""
