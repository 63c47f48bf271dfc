// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// @title SourceClaims
/// @notice Data providers claim their source files, from their own addresses, before handing them to
///         a publisher: the chain's clock dates each claim, and the address is the one the file's pay
///         must go to. Anyone may claim; nothing here is the publisher's to change.
/// @dev A claim is a seal, keccak256(abi.encodePacked("caravan/source/", cid, claimant)), computed off
///      chain: it names no file until the file is published, and the same seal sent from another
///      address seals nothing of that address's, so copying a claim seen in the mempool gains nothing.
///      Each seal comes with its file's bucket, the first two bytes of
///      keccak256(abi.encodePacked("caravan/source-bucket/", cid)): 16 bits that tell no one the file,
///      and let an auditor test only the claims in a file's bucket instead of every claim. An address's
///      first claim of a seal stands; claiming it again changes nothing. A contract of its own, so the
///      registry and distributor that runs are anchored in stay as deployed.
contract SourceClaims {
    mapping(address claimant => mapping(bytes32 seal => uint64 claimedAt)) private _claims;

    event SourceClaimed(address indexed claimant, bytes32 indexed seal, uint16 indexed bucket, uint64 claimedAt);

    error NoSeals();
    error BucketsMismatch(uint256 seals, uint256 buckets);

    /// @notice Claim, from the sender's address, the source files these seals name, each with its bucket.
    /// @return claimed how many seals were new for the sender (those claimed before keep their time).
    function claimSources(bytes32[] calldata seals, uint16[] calldata buckets) external returns (uint256 claimed) {
        if (seals.length == 0) revert NoSeals();
        if (buckets.length != seals.length) revert BucketsMismatch(seals.length, buckets.length);
        uint64 time = uint64(block.timestamp);
        for (uint256 i = 0; i < seals.length; i++) {
            if (_claims[msg.sender][seals[i]] != 0) continue;
            _claims[msg.sender][seals[i]] = time;
            emit SourceClaimed(msg.sender, seals[i], buckets[i], time);
            claimed++;
        }
    }

    /// @notice When `claimant` first claimed `seal` (block timestamp), 0 if never.
    function claimedAt(address claimant, bytes32 seal) external view returns (uint64) {
        return _claims[claimant][seal];
    }
}
