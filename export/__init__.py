"""oat_edge.export"""
