// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";

/// @title RoyaltyDistributor
/// @notice Pull payments against Merkle roots of `(address account, uint256 weight)` leaves
///         in OpenZeppelin StandardMerkleTree encoding.
/// @dev A distribution (bytes32 id) is one root plus its accounting. Two kinds share one
///      claim path: an account is owed `deposited * weight / totalWeight`, minus what it has
///      already received.
///      - `Shares`: an attribution run. Weights are basis points (`totalWeight` = 10,000) and
///        anyone may deposit revenue for the run at any time; each claim pays the leaf's share
///        of every deposit so far. Entitlements are computed on the cumulative deposit, so the
///        rounding dust of one deposit is carried into the next and stays claimable.
///      - `Amounts`: a settlement (e.g. a serving epoch). Weights are absolute amounts,
///        `totalWeight` is their sum and caps the funding; once fully funded each leaf
///        claims exactly its amount (pro rata while partially funded).
///      Cost of a root is constant in the number of leaves; a claim costs O(log n).
contract RoyaltyDistributor is AccessControl, ReentrancyGuard {
    using SafeERC20 for IERC20;

    bytes32 public constant PUBLISHER_ROLE = keccak256("PUBLISHER_ROLE");
    uint256 public constant BPS = 10_000;

    enum Kind {
        None,
        Shares,
        Amounts
    }

    struct Distribution {
        bytes32 root;
        Kind kind;
        address token; // address(0): ETH
        uint256 totalWeight;
        uint256 deposited;
        uint256 claimed;
    }

    mapping(bytes32 id => Distribution) private _distributions;
    mapping(bytes32 id => mapping(bytes32 leaf => uint256)) private _claimedByLeaf;

    event DistributionCreated(bytes32 indexed id, bytes32 root, Kind kind, address token, uint256 totalWeight);
    event Deposited(bytes32 indexed id, address indexed from, uint256 amount);
    event Claimed(bytes32 indexed id, address indexed account, uint256 weight, uint256 amount);

    error DistributionExists(bytes32 id, bytes32 root);
    error UnknownDistribution(bytes32 id);
    error InvalidDistribution(string reason);
    error WrongAsset(bytes32 id, address token);
    error ZeroDeposit();
    error OverFunded(bytes32 id, uint256 cap, uint256 deposited, uint256 amount);
    error InvalidProof(bytes32 id, address account, uint256 weight);
    error NothingToClaim(bytes32 id, address account);
    error ExceedsDeposits(bytes32 id, uint256 owed, uint256 available);

    constructor(address admin) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(PUBLISHER_ROLE, admin);
    }

    /// @notice Create distribution `id` once; its root and terms never change afterwards.
    function createDistribution(bytes32 id, bytes32 root, Kind kind, address token, uint256 totalWeight)
        external
        onlyRole(PUBLISHER_ROLE)
    {
        Distribution storage d = _distributions[id];
        if (d.kind != Kind.None) revert DistributionExists(id, d.root);
        if (root == bytes32(0)) revert InvalidDistribution("zero root");
        if (kind == Kind.Shares) {
            if (totalWeight != BPS) revert InvalidDistribution("share distributions weigh 10000 bps");
        } else if (kind == Kind.Amounts) {
            if (totalWeight == 0) revert InvalidDistribution("zero total amount");
        } else {
            revert InvalidDistribution("unknown kind");
        }
        d.root = root;
        d.kind = kind;
        d.token = token;
        d.totalWeight = totalWeight;
        emit DistributionCreated(id, root, kind, token, totalWeight);
    }

    /// @notice Deposit ETH revenue for distribution `id`. Anyone may pay.
    function deposit(bytes32 id) external payable nonReentrant {
        Distribution storage d = _existing(id);
        if (d.token != address(0)) revert WrongAsset(id, address(0));
        _credit(id, d, msg.value);
    }

    /// @notice Deposit `amount` of the distribution's ERC-20 (approve first). Credits what arrived.
    function depositToken(bytes32 id, uint256 amount) external nonReentrant {
        Distribution storage d = _existing(id);
        if (d.token == address(0)) revert WrongAsset(id, address(0));
        IERC20 token = IERC20(d.token);
        uint256 before = token.balanceOf(address(this));
        token.safeTransferFrom(msg.sender, address(this), amount);
        _credit(id, d, token.balanceOf(address(this)) - before);
    }

    /// @notice Pay `account` everything it is owed so far in `id`. Anyone may submit the claim;
    ///         the funds always go to `account`.
    function claim(bytes32 id, address account, uint256 weight, bytes32[] calldata proof)
        external
        nonReentrant
        returns (uint256 amount)
    {
        Distribution storage d = _existing(id);
        bytes32 leaf = leafHash(account, weight);
        if (!MerkleProof.verifyCalldata(proof, d.root, leaf)) revert InvalidProof(id, account, weight);

        amount = _entitled(d, weight) - _claimedByLeaf[id][leaf];
        if (amount == 0) revert NothingToClaim(id, account);
        uint256 available = d.deposited - d.claimed;
        if (amount > available) revert ExceedsDeposits(id, amount, available);

        _claimedByLeaf[id][leaf] += amount;
        d.claimed += amount;
        emit Claimed(id, account, weight, amount);

        if (d.token == address(0)) {
            Address.sendValue(payable(account), amount);
        } else {
            IERC20(d.token).safeTransfer(account, amount);
        }
    }

    function distributionOf(bytes32 id) external view returns (Distribution memory) {
        return _distributions[id];
    }

    function claimedOf(bytes32 id, address account, uint256 weight) external view returns (uint256) {
        return _claimedByLeaf[id][leafHash(account, weight)];
    }

    /// @notice What `claim` would pay now for a valid leaf (0 if nothing is owed).
    function claimable(bytes32 id, address account, uint256 weight) external view returns (uint256) {
        Distribution storage d = _distributions[id];
        if (d.kind == Kind.None) return 0;
        return _entitled(d, weight) - _claimedByLeaf[id][leafHash(account, weight)];
    }

    function verifyLeaf(bytes32 id, address account, uint256 weight, bytes32[] calldata proof)
        external
        view
        returns (bool)
    {
        return MerkleProof.verifyCalldata(proof, _distributions[id].root, leafHash(account, weight));
    }

    /// @notice StandardMerkleTree leaf: keccak256(bytes.concat(keccak256(abi.encode(account, weight)))).
    function leafHash(address account, uint256 weight) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(account, weight))));
    }

    function _existing(bytes32 id) private view returns (Distribution storage d) {
        d = _distributions[id];
        if (d.kind == Kind.None) revert UnknownDistribution(id);
    }

    function _credit(bytes32 id, Distribution storage d, uint256 amount) private {
        if (amount == 0) revert ZeroDeposit();
        if (d.kind == Kind.Amounts && d.deposited + amount > d.totalWeight) {
            revert OverFunded(id, d.totalWeight, d.deposited, amount);
        }
        d.deposited += amount;
        emit Deposited(id, msg.sender, amount);
    }

    function _entitled(Distribution storage d, uint256 weight) private view returns (uint256) {
        return Math.mulDiv(d.deposited, weight, d.totalWeight);
    }
}
