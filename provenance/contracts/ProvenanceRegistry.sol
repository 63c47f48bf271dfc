// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title ProvenanceRegistry
/// @notice Anchors Caravan provenance records (content-addressed, RFC 8785 JSON) on chain.
/// @dev One entry per record CID, ever: a record is identified by its CID, so recording it
///      twice is refused (`AlreadyRecorded`) rather than creating a second entry. A record's
///      primary parent must already be recorded, so the on-chain DAG has no dangling edges.
///      The full CID strings live in the `Recorded` event; storage keeps only the hashes an
///      auditor needs to cross-check the event and the content.
///
///      Anyone may also claim source files, from their own address, before handing them to a
///      publisher: the chain's clock dates the claim and the address is the one the data's pay must
///      go to. A claim is a seal, keccak256(abi.encodePacked("caravan/source/", cid, claimant)),
///      computed off chain: it names no file until the file is published, and the same seal sent
///      from another address seals nothing of that address's, so copying a claim seen in the mempool
///      gains nothing. An address's first claim of a seal stands; claiming it again changes nothing.
contract ProvenanceRegistry is AccessControl {
    bytes32 public constant PUBLISHER_ROLE = keccak256("PUBLISHER_ROLE");
    uint256 public constant MAX_CID_LENGTH = 128;

    struct Entry {
        bytes32 runId;
        bytes32 parent; // keccak256 of the parent CID string, 0 for a root record
        address publisher;
        uint64 blockNumber;
    }

    mapping(bytes32 cidHash => Entry) private _entries;
    mapping(address claimant => mapping(bytes32 seal => uint64 claimedAt)) private _claims;

    event Recorded(
        bytes32 indexed runId,
        bytes32 indexed cidHash,
        address indexed publisher,
        string recordCid,
        string parentCid
    );

    event SourceClaimed(address indexed claimant, bytes32 indexed seal, uint16 indexed bucket, uint64 claimedAt);

    error AlreadyRecorded(string recordCid);
    error UnknownParent(string parentCid);
    error InvalidCid(string cid);
    error NoSeals();
    error BucketsMismatch(uint256 seals, uint256 buckets);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PUBLISHER_ROLE, admin);
    }

    /// @notice Record `recordCid` (child of `parentCid`, or "" for a root) under `runId`.
    function record(string calldata recordCid, string calldata parentCid, bytes32 runId)
        external
        onlyRole(PUBLISHER_ROLE)
        returns (bytes32 cidHash)
    {
        uint256 length = bytes(recordCid).length;
        if (length == 0 || length > MAX_CID_LENGTH) revert InvalidCid(recordCid);
        cidHash = keccak256(bytes(recordCid));
        if (_entries[cidHash].blockNumber != 0) revert AlreadyRecorded(recordCid);

        bytes32 parent;
        if (bytes(parentCid).length != 0) {
            parent = keccak256(bytes(parentCid));
            if (_entries[parent].blockNumber == 0) revert UnknownParent(parentCid);
        }
        _entries[cidHash] = Entry(runId, parent, msg.sender, uint64(block.number));
        emit Recorded(runId, cidHash, msg.sender, recordCid, parentCid);
    }

    function isRecorded(string calldata recordCid) external view returns (bool) {
        return _entries[keccak256(bytes(recordCid))].blockNumber != 0;
    }

    function entryOf(string calldata recordCid) external view returns (Entry memory) {
        return _entries[keccak256(bytes(recordCid))];
    }

    /// @notice Claim, from the sender's address, the source files these seals name (see above). Each
    ///         seal comes with its file's bucket, the first two bytes of
    ///         keccak256(abi.encodePacked("caravan/source-bucket/", cid)): 16 bits that tell no one the
    ///         file, and let an auditor test only the claims in a file's bucket instead of every claim.
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
