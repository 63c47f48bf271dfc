// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

interface IClaim {
    function claim(bytes32 id, address account, uint256 weight, bytes32[] calldata proof)
        external
        returns (uint256);
}

/// @notice Test-only contributor contract that tries to re-enter `claim` when paid.
contract ReentrantClaimer {
    IClaim public immutable target;
    bytes32 public id;
    uint256 public weight;
    bytes32[] public proof;
    uint256 public attempts;
    uint256 public succeeded;

    constructor(IClaim target_) {
        target = target_;
    }

    function arm(bytes32 id_, uint256 weight_, bytes32[] calldata proof_) external {
        id = id_;
        weight = weight_;
        proof = proof_;
    }

    /// @dev Swallows the nested failure so the test can see the outer claim succeed once
    ///      while every re-entry is refused.
    receive() external payable {
        attempts += 1;
        try target.claim(id, address(this), weight, proof) {
            succeeded += 1;
        } catch {}
    }
}
