//! DDP, DiLoCo and Photon: each one implementation of the harness strategy trait.
