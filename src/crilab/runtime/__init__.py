"""The fake CRI runtime: state (no gRPC) below, servicer and server above."""
