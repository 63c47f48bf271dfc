// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @notice Test-only ERC-20 with open minting (tests and benchmarks only; never deployed for real).
contract TestToken is ERC20 {
    constructor() ERC20("Caravan Test Token", "CTT") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }
}
