"""bitmind-lite: detect AI-generated images on a Bittensor subnet."""

__version__ = "0.1.0"
# -- end of version --

# The subnet's weights version key: validators pass it to SetWeights, so bump it whenever scoring changes
# in a way that must not mix with older validators (major*10000 + minor*100 + patch).
SPEC_VERSION = 100
