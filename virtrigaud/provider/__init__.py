"""Generated protobuf packages of the virtrigaud provider contract."""
