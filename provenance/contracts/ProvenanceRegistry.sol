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

    event Recorded(
        bytes32 indexed runId,
        bytes32 indexed cidHash,
        address indexed publisher,
        string recordCid,
        string parentCid
    );

    error AlreadyRecorded(string recordCid);
    error UnknownParent(string parentCid);
    error InvalidCid(string cid);

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
}
