"""oat_edge.training"""
